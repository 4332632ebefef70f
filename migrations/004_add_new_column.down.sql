-- Rollback of 004_add_new_column.sql (never run by migrate).
ALTER TABLE users DROP COLUMN email_verified;
