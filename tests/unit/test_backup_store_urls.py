"""s3:// URLs of the backup store: what they name, and clear errors for what is not one."""

import pytest

from infra.backupagent import BackupAgentError
from infra.backupagent.store import StoreError, parse_s3_url


@pytest.mark.parametrize("url, expected", [
    ("s3://sin-backups/prod/datastores", ("sin-backups", "prod/datastores")),
    ("s3://sin-backups/prod/", ("sin-backups", "prod")),
    ("s3://sin-backups", ("sin-backups", "")),
    ("s3://sin.backups-01/", ("sin.backups-01", "")),
])
def test_an_s3_url_names_its_bucket_and_prefix(url, expected):
    assert parse_s3_url(url) == expected


@pytest.mark.parametrize("url, says", [
    ("https://sin-backups/prod", "is not of the form s3://BUCKET[/PREFIX]"),
    ("s3:///prod", "names bucket ''"),
    ("s3://Sin_Backups/prod", "names bucket 'Sin_Backups'"),
    ("s3://ab", "names bucket 'ab'"),
    ("s3://sin-backups/prod//x", "empty path segment"),
])
def test_a_bad_s3_url_is_a_value_error_naming_what_to_fix(url, says):
    with pytest.raises(StoreError) as failure:
        parse_s3_url(url)
    assert isinstance(failure.value, ValueError) and isinstance(failure.value, BackupAgentError)
    assert says in str(failure.value) and repr(url) in str(failure.value)
