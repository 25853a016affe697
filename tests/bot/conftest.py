"""The fake Slack Web API for every test of the Slack app."""

from tests.slack.fake_slack import fake_slack

__all__ = ["fake_slack"]
