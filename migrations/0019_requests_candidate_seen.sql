-- When a list walk last found a lone candidate for an unknown request before the grace since
-- its outcome became unknown had passed. The candidate is adopted only once the grace has passed;
-- until then another walk would find nothing new, so none is due for the request.
alter table openai.project_requests add column candidate_seen_at timestamptz;
