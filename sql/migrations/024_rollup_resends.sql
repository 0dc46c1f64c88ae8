-- 024: listener resends in the hourly rollup. A resend that was not loaded (resend_of set, a copy
-- of a message the sender sent again because its ACK did not come back) is no sign of life, and
-- the silence check already leaves it out of the last day, read from message_store. Older hours
-- come from the rollup, which counted such resends as messages: a sender stuck resending for more
-- than a day showed its last hour of resends as its last message. Hours rolled up before this
-- migration keep 0 until they are recounted.

ALTER TABLE interface_volume_hourly ADD COLUMN resends BIGINT NOT NULL DEFAULT 0;
