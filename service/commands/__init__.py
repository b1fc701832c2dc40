"""service/commands."""
