"""What fal billed, beside what the pipeline estimated: the day's requests from the ledger matched with fal's
billing events (or, without an admin key, with the billable units fal reported on each result)."""
