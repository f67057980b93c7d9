-- Every stored row once per (dataset, day, key): the DynamoDB rows table's uniqueness.
-- One table for every dataset, not a table per dataset: datasets are configuration
-- (reports.toml) and gain columns without a deploy, so a row's columns are one JSON document
-- typed by its dataset's definition, as the DynamoDB item's `cols` map is.
CREATE TABLE IF NOT EXISTS rows (
    dataset     text        NOT NULL,
    day         date        NOT NULL,
    -- "C": byte order, the order DynamoDB sorts keys in, so both stores page alike.
    key         text        COLLATE "C" NOT NULL,
    cols        jsonb       NOT NULL,
    src         text        NOT NULL,
    ingested_at timestamptz NOT NULL,
    PRIMARY KEY (dataset, day, key)
);
