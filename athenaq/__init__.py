"""athenaq: one service that submits, tracks, stores, refreshes and cancels Athena queries."""
