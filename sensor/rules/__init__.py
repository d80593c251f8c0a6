"""Protection rules as DuckDB SQL: loading and linting rule files, evaluating them into findings."""
