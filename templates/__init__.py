"""Jinja2 templates for the mail and Slack messages we send; a package only so they install with the code."""
