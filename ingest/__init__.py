"""The receiver: `orderflow serve`, an aiohttp app that authenticates, validates and hands off."""
