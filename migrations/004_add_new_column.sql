-- Users confirm their email address; everyone who signed up before 2025 already did.
BEGIN;

ALTER TABLE users
ADD COLUMN email_verified BOOLEAN DEFAULT FALSE NOT NULL;

UPDATE users SET email_verified = TRUE WHERE created_at < '2025-01-01';

COMMIT;
