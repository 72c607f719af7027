-- The number of users and roles, kept by statement triggers, so an unfiltered listing need not
-- count a large table on every page.
CREATE TABLE role_count (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    n         bigint NOT NULL
);
INSERT INTO role_count (n) SELECT count(*) FROM roles;

CREATE FUNCTION role_count_inserted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE role_count SET n = n + (SELECT count(*) FROM inserted_rows);
    RETURN NULL;
END $$;

CREATE FUNCTION role_count_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE role_count SET n = n - (SELECT count(*) FROM deleted_rows);
    RETURN NULL;
END $$;

CREATE TRIGGER roles_counted_on_insert AFTER INSERT ON roles
    REFERENCING NEW TABLE AS inserted_rows FOR EACH STATEMENT EXECUTE FUNCTION role_count_inserted();
CREATE TRIGGER roles_counted_on_delete AFTER DELETE ON roles
    REFERENCING OLD TABLE AS deleted_rows FOR EACH STATEMENT EXECUTE FUNCTION role_count_deleted();
