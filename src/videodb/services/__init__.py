"""The video platform's applications (upload, metadata, streaming) and their schema."""
