-- Expand account_id to accommodate longer account identifiers.
ALTER TABLE accounts ALTER COLUMN account_id TYPE varchar(20);
