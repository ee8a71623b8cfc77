"""The leaderboard web app (``smallfit serve``): signed bundles checked on upload, ranked by task
hash within a hardware class, filtered by a budget. Its own SQLite database (:mod:`.db`)."""
