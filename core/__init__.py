"""The domain and the store of supportdesk.

Everything that changes data goes through the service functions here; the
front ends (``intake``, ``bot``, ``notifications``) and the command line only
translate their protocol to these calls. This package imports none of them.
"""
