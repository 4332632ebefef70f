-- pgsluice: no-transaction
-- Built without blocking writes; a failure leaves a 'started' row and names any INVALID index.
CREATE INDEX CONCURRENTLY IF NOT EXISTS users_created_at_idx ON users (created_at);
