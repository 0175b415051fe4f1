"""Drives the emulator with the official OpenAI Python SDK, as a new user would.

Usage: python3 scripts/sdk_check.py BASE_URL ADMIN_KEY EXPECTED_PROJECTS
"""
import sys

import openai

base_url, admin_key, expected = sys.argv[1], sys.argv[2], int(sys.argv[3])
client = openai.OpenAI(admin_api_key=admin_key, api_key="unused-placeholder", base_url=base_url)
projects = client.admin.organization.projects

ids = [p.id for p in projects.list(limit=100, include_archived=True)]
assert len(ids) == expected, f"auto-pagination listed {len(ids)} of {expected}"
assert len(set(ids)) == len(ids), "a project was listed twice"
active = [p for p in projects.list(limit=37)]
assert all(p.status == "active" for p in active), "archived projects listed by default"

created = projects.create(name="SDK check ✓ «quotes»")
assert created.name == "SDK check ✓ «quotes»" and created.status == "active"
assert projects.retrieve(created.id).id == created.id
assert projects.update(created.id, name="SDK renamed").name == "SDK renamed"
assert projects.archive(created.id).status == "archived"
try:
    projects.update(created.id, name="again")
    raise AssertionError("modifying an archived project must fail")
except openai.BadRequestError as error:
    assert error.code == "project_archived", error.code
try:
    openai.OpenAI(admin_api_key="sk-admin-wrong-placeholder", api_key="x", base_url=base_url, max_retries=0).admin.organization.projects.list().data
    raise AssertionError("a wrong key must be refused")
except openai.AuthenticationError:
    pass
print(f"sdk check: listed {len(ids)} projects over {-(-len(ids) // 100)} pages, created, renamed and archived one: ok")
