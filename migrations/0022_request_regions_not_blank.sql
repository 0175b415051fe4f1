-- A blank region, or one with spaces around it, is bad input like a blank name: refused at
-- insert, not sent for the API to refuse. Rows already stored are left as they are.
alter table openai.project_requests
    add constraint request_geography_is_blank
        check (geography is null or btrim(geography) <> '') not valid,
    add constraint request_geography_has_surrounding_spaces
        check (geography is null or btrim(geography) = '' or geography !~ '^[[:space:]]|[[:space:]]$') not valid,
    add constraint request_residency_is_blank
        check (residency is null or btrim(residency) <> '') not valid,
    add constraint request_residency_has_surrounding_spaces
        check (residency is null or btrim(residency) = '' or residency !~ '^[[:space:]]|[[:space:]]$') not valid;
