"""Alembic environment: runs against the engine that ``instatag.db`` hands over."""

from alembic import context

from instatag.schema import metadata

engine = context.config.attributes["engine"]


def include_object(obj, name, type_, reflected, compare_to):
    # Views are created from sql/views.sql, not by migrations.
    return not (type_ == "table" and reflected and compare_to is None and name == "alembic_version")


with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        include_object=include_object,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
