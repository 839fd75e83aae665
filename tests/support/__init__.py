"""Helpers shared by the test suites: real processes (Redis, the SQS endpoint, adclick roles) and their control."""
