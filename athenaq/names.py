"""What Athena accepts in a query's context and options, from botocore's Athena service
model (2017-05-18): the config, the submit's schema and the local engine check the same
rules. Lengths count characters."""

from __future__ import annotations

import re

from marshmallow import ValidationError

# QueryExecutionContext.Database (DatabaseString): 1 to 255 characters, no pattern.
DATABASE_LENGTH = (1, 255)
# WorkGroupName.
WORKGROUP = re.compile(r"[a-zA-Z0-9._-]{1,128}")
# QueryExecutionContext.Catalog (CatalogNameString): 1 to 256 characters of text: a tab,
# or any character from the space up but the lone surrogates.
CATALOG = re.compile(r"[\t\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]{1,256}")
# ExecutionParameter: each 1 to 1024 characters. The model sets no count; athenaq takes
# up to 100.
PARAMETER_LENGTH = (1, 1024)
MAX_PARAMETERS = 100
# ResultReuseByAgeConfiguration.MaxAgeInMinutes is 0 to 10080 (a week); 0 would ask for
# reuse of nothing, so athenaq takes 1 to 10080.
REUSE_MINUTES = (1, 10_080)


def validate_workgroup(name: str) -> None:
    """A marshmallow validator: ValidationError unless `name` is a workgroup's name."""
    if WORKGROUP.fullmatch(name) is None:
        raise ValidationError("must be 1 to 128 of the characters a-z A-Z 0-9 . _ -")


def validate_catalog(name: str) -> None:
    """A marshmallow validator: ValidationError unless `name` is a catalog's name."""
    if CATALOG.fullmatch(name) is None:
        raise ValidationError("must be 1 to 256 characters, no control character but a tab")


def validate_database(name: str) -> None:
    """A marshmallow validator: ValidationError unless `name` is a database's name."""
    if not DATABASE_LENGTH[0] <= len(name) <= DATABASE_LENGTH[1]:
        raise ValidationError("must be 1 to 255 characters")
