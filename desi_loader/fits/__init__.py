"""What the files hold, and the plan made from it, without a database: FITS headers and
raw rows (read), DATASUM arithmetic (checksum), FITS column -> PostgreSQL column (schema),
the catalog presets (config) and the published data model (datamodel), files -> tables and
tasks (discover)."""
