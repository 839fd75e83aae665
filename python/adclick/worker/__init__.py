"""The worker role: SQS consumer that validates, attributes and persists clicks and conversions."""
