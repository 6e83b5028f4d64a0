"""The I/O both sides share, one floor above the engine: Kafka clients and topics, compacted-topic views,
the OCI registry client, a region's object store, and process plumbing (signals, HTTP, supervision, health).

Imports point down: `engine` < `adapters` < `producers`, `consumers` < `georep`.
"""
