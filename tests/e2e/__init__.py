"""End-to-end tests against the real Redmine and RT from Debian's packages."""
