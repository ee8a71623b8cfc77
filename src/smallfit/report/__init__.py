"""Reports: terminal tables (HTML pages and model cards come later)."""
