//! Integration tests (added with the HTTP layer).
