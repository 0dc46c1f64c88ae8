-- 004: duplicates are looked up by control ID (indexed) and then compared by content hash in
-- memory, so the content-hash index only cost every insert an extra B-tree update.
DROP INDEX ix_message_store_content;
