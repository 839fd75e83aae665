"""The postback role: advertisers' conversions (S2S postbacks, pixels, Lambda) checked and queued to SQS."""
