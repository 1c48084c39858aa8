"""The mock Microsoft Clearinghouse: its own daemon, database and HTTP JSON API (docs/clearinghouse.md)."""
