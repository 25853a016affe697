"""Slack test doubles: a fake Web API (fake_slack), signed Slack requests (signing), Bolt over HTTP (bolt_http)."""
