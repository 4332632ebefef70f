-- File: database/migrations/004_add_new_column.sql

-- Description: Add email_verified column to users table
-- Author: LLM Session / Developer
-- Date: 2025-12-25

BEGIN;

-- Add column
ALTER TABLE users
ADD COLUMN email_verified BOOLEAN DEFAULT FALSE NOT NULL;

-- Update existing users (if needed)
UPDATE users SET email_verified = TRUE WHERE created_at < '2025-01-01';

COMMIT;
