"""Email intake: turn mail that customers send to support into requests and replies."""
