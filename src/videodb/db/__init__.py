"""What applications import: the writer and reader of the guide's two datasources, made safe."""

from videodb.db.errors import Failure, ReadOnlySessionError, WriteInDoubtError, classify
from videodb.db.layer import DataLayer, ReadUnit, WriteUnit
from videodb.db.settings import DataSourceSettings
from videodb.db.token import COOKIE, HEADER, ConsistencyToken, TokenError

__all__ = [
    "COOKIE",
    "HEADER",
    "ConsistencyToken",
    "DataLayer",
    "DataSourceSettings",
    "Failure",
    "ReadOnlySessionError",
    "ReadUnit",
    "TokenError",
    "WriteInDoubtError",
    "WriteUnit",
    "classify",
]
