"""Notices to owners before their leftovers go (issue 15): digests, channels, an outbox."""
