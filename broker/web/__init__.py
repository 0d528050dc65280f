"""The web dashboard (server-rendered Jinja2 pages) served by the broker."""
