-- Inserts a backfill page's rows as they came, in binary COPY form: days never read, with
-- nothing stored for them (checked first, in the same transaction, under the cost lock).
copy openai.costs
    (bucket_start, bucket_end, project_id, line_item, currency, amount, quantity, quantity_unit, raw,
     first_fetched_at, last_fetched_at, first_run, last_run)
from stdin (format binary)
