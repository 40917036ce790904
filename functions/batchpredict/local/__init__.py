"""The embedded local stack: servers on loopback and a stand-in for Lambda's SQS event-source mapping."""
