"""The Slack front end: triage and approval cards, buttons, modals and commands, over the core services."""
