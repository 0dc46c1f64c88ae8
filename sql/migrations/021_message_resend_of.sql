-- 021: a listener resend (same sending facility, control ID and content as a message already
-- stored, sent again because its ACK did not arrive or was not understood) has a row of its own,
-- like every received message, and resend_of names the earlier copy. Monitoring leaves resends
-- out of a facility's last message: a sender stuck resending one message is silent, whatever
-- became of that message.

ALTER TABLE message_store ADD COLUMN resend_of BIGINT;
