-- Data fix: some client users had the wrong role.
UPDATE users SET role = 'client' WHERE is_client AND role <> 'client';
