-- Run once by the postgres image when its data volume is empty: Letta stores embeddings with
-- pgvector. (Letta's migrations need the extension; the letta user owns the database.)
CREATE EXTENSION IF NOT EXISTS vector;
