"""The ``supportdesk`` command and the wiring that starts the front ends together."""
