-- A superuser "has" every role (pg_has_role answers true for all of them), so the producer
-- identity of a superuser that inserts jobs was the first member of pdq_producer by name: it
-- changed whenever a producer role was created or dropped, and with it the namespace of the
-- superuser's idempotency keys (a repeated key made a second job). A superuser's identity is
-- now itself, unless it is a direct member of pdq_producer; other roles are judged by the
-- memberships they really hold, as before.

create or replace function pdq.producer_identity_of(who name) returns text
language plpgsql stable set search_path = pg_catalog, pg_temp
as $$
declare
    identity text;
    superuser boolean := coalesce((select r.rolsuper from pg_catalog.pg_roles r
                                   where r.rolname = who), false);
begin
    select m.rolname::text into identity
    from pg_catalog.pg_auth_members a
    join pg_catalog.pg_roles g on g.oid = a.roleid and g.rolname = 'pdq_producer'
    join pg_catalog.pg_roles m on m.oid = a.member
    where m.rolname = who
       or (not superuser and pg_catalog.pg_has_role(who, m.oid, 'USAGE'))
    order by m.rolname = who desc, m.rolname
    limit 1;
    return coalesce(identity, who::text);
end
$$;

create or replace function pdq.producer_identity() returns text
language plpgsql stable set search_path = pg_catalog, pg_temp
as $$
begin
    return pdq.producer_identity_of(current_user);
end
$$;
