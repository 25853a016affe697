"""Makes the ``fake_slack`` fixture available to every test under tests/slack/.

Tests elsewhere can do the same: ``from tests.slack.fake_slack import fake_slack``
in their own conftest.py (listed in ``__all__`` so linters see it is used).
"""

from tests.slack.fake_slack import fake_slack

__all__ = ["fake_slack"]
