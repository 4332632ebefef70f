-- Base schema: cloud accounts and the users who manage them.
CREATE TABLE accounts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  varchar(12) NOT NULL UNIQUE,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE users (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id  bigint NOT NULL REFERENCES accounts (id),
    email       text NOT NULL UNIQUE,
    role        text NOT NULL DEFAULT 'member' CHECK (role IN ('admin', 'member', 'client')),
    is_client   boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO accounts (account_id, name) VALUES ('123456789012', 'Acme'), ('210987654321', 'Globex');
INSERT INTO users (account_id, email, role, is_client, created_at) VALUES
    (1, 'ops@acme.example', 'admin', false, '2024-03-01'),
    (1, 'buyer@client.example', 'member', true, '2024-11-15'),
    (2, 'dev@globex.example', 'member', false, '2025-02-10');
