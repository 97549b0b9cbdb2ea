"""Settings: every pydantic settings class (``settings``), the preset table (``presets``), the machinery that
reads TOML files and environment variables (``base``) and the whole-file check (``check``)."""
