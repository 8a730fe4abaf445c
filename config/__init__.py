"""The spec language and berthd's own settings: TOML in, frozen and validated objects out."""
