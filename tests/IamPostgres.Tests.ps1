#Requires -Version 7.0
# Connect-IamPostgres and Invoke-IamPostgresQuery end to end: the module's tunnel (sandbox agent), the RDS-IAM double
# (TLS with a sandbox CA, SigV4 token checks, rds_iam membership) and a real PostgreSQL, with real Npgsql and psql.
BeforeAll {
    Import-Module (Join-Path $PSScriptRoot 'TestHelpers.psm1') -Force
    Import-Module (Get-TestModulePath) -Force
    $script:Sandbox = Start-TestSandbox -ExtraArguments @('--rds')
    $script:Aws = $Sandbox.Aws
    $script:Pg = $Sandbox.postgres
    $script:Rds = $Sandbox.rds
    $script:Db = @{ DbHost = $Rds.endpoint; DbPort = $Rds.port; Database = $Pg.database; SslRootCertificate = $Rds.caBundle }

    function Invoke-AdminSql([string] $Sql) {
        $psi = [System.Diagnostics.ProcessStartInfo]::new('psql')
        foreach ($a in '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', "$($Pg.port)", '-U', $Pg.user, '-d', $Pg.database, '-c', $Sql) { $psi.ArgumentList.Add($a) }
        $psi.Environment['PGPASSWORD'] = $Pg.password
        $psi.RedirectStandardOutput = $true; $psi.RedirectStandardError = $true
        $p = [System.Diagnostics.Process]::Start($psi); $out = $p.StandardOutput.ReadToEnd() + $p.StandardError.ReadToEnd(); $p.WaitForExit()
        if ($p.ExitCode) { throw "psql failed: $out" }
        $out.Trim()
    }

    # An IAM user as Grant-RdsIamUser would leave it, and a table it may not read.
    Invoke-AdminSql @'
CREATE ROLE app_iam LOGIN; GRANT rds_iam TO app_iam; GRANT SELECT ON seed_items TO app_iam;
CREATE TABLE iam_notes (id serial PRIMARY KEY, body text NOT NULL); GRANT SELECT, INSERT, UPDATE, DELETE ON iam_notes TO app_iam; GRANT USAGE ON SEQUENCE iam_notes_id_seq TO app_iam;
CREATE TABLE secret_stuff (x int); INSERT INTO secret_stuff VALUES (1);
CREATE TABLE stream_gates (name text PRIMARY KEY); GRANT SELECT ON stream_gates TO app_iam;
CREATE FUNCTION stream_gate(gate text, max_wait_s int) RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE deadline timestamptz := clock_timestamp() + make_interval(secs => max_wait_s);
BEGIN
  LOOP
    IF EXISTS (SELECT 1 FROM stream_gates WHERE name = gate) THEN RETURN 'opened'; END IF;
    IF clock_timestamp() > deadline THEN RETURN 'timed out'; END IF;
    PERFORM pg_sleep(0.02);
  END LOOP;
END $$;
'@ | Out-Null
    $script:Conn = Connect-IamPostgres -Name bastion -UserName app_iam @Db @Aws
}

AfterAll {
    if ($Conn) { $Conn | Disconnect-IamPostgres }
    Get-BastionSession | Stop-BastionSession -ErrorAction SilentlyContinue
    Stop-TestSandbox $Sandbox
}

Describe 'Connect-IamPostgres' {
    It 'returns an open connection through a tunnel, with the server version' {
        $Conn | Should -BeOfType ([BastionTools.IamPostgresConnection])
        $Conn.State | Should -Be 'Open'
        $Conn.Endpoint | Should -Be $Rds.endpoint
        $Conn.UserName | Should -Be 'app_iam'
        $Conn.ServerVersion | Should -Match '^15\.'
        $Conn.SslMode | Should -Be 'VerifyFull'
        (Get-BastionSession -SessionId $Conn.SessionId).LocalPort | Should -Be $Conn.LocalPort
    }

    It 'refuses the database under the default trust: the sandbox CA is not in the RDS bundle' {
        $db = $Db.Clone(); $db.Remove('SslRootCertificate')
        $out = Connect-IamPostgres -Name bastion -UserName app_iam @db @Aws -ErrorVariable errs -ErrorAction SilentlyContinue
        $out | Should -BeNullOrEmpty
        $errs[0].FullyQualifiedErrorId | Should -BeLike 'DatabaseTlsFailed,*'
        $errs[0].CategoryInfo.Category | Should -Be 'SecurityError'
        "$($errs[0])" | Should -Match 'does not chain to a root in the trust bundle'
        @(Get-BastionSession | Where-Object RemoteHost -eq $Rds.endpoint).Count | Should -Be 1   # its own tunnel was closed again
    }

    It 'fails like RDS for a user that is not in rds_iam, without showing the token' {
        Invoke-AdminSql 'CREATE ROLE not_iam LOGIN' | Out-Null
        $all = Connect-IamPostgres -Name bastion -UserName not_iam @Db @Aws -Verbose -Debug -ErrorVariable errs -ErrorAction SilentlyContinue *>&1
        $errs[0].FullyQualifiedErrorId | Should -BeLike 'DatabaseLoginFailed,*'
        "$($errs[0])" | Should -Match 'PAM authentication failed for user "not_iam"'
        ($all | Out-String) | Should -Not -Match 'X-Amz-Signature=[0-9a-f]'
        ($all | Out-String) | Should -Not -Match ([regex]::Escape($Aws.SecretKey))
    }

    It 'shows no token, secret key or password in any stream at -Verbose -Debug' {
        $all = & {
            $c = Connect-IamPostgres -Name bastion -UserName app_iam @Db @Aws -Verbose -Debug
            Invoke-IamPostgresQuery -Connection $c -Query 'select 1 as one' -Verbose -Debug
            $c | Disconnect-IamPostgres -Verbose -Debug
        } *>&1 | Out-String
        $all | Should -Match 'Credentials: from'
        $all | Should -Match 'Tokens: signed for'
        $all | Should -Not -Match 'X-Amz-Signature=[0-9a-f]'
        $all | Should -Not -Match 'X-Amz-Credential=AKIA'
        $all | Should -Not -Match ([regex]::Escape($Aws.SecretKey))
        $all | Should -Not -Match ([regex]::Escape($Pg.password))
    }

    It 'reuses an open session with -Session, and leaves it open on Disconnect' {
        $s = Start-BastionSession -Name bastion -RemoteHost $Rds.endpoint -RemotePort $Rds.port @Aws 6>$null
        try {
            $db = $Db.Clone(); $db.Remove('DbHost')
            $c = $s | Connect-IamPostgres -DbHost $Rds.endpoint -UserName app_iam @db @Aws
            $c.SessionId | Should -Be $s.SessionId
            $c.LocalPort | Should -Be $s.LocalPort
            (Invoke-IamPostgresQuery -Connection $c -Query 'select 21 * 2 as n').n | Should -Be 42
            $c | Disconnect-IamPostgres
            $s.State | Should -Be 'Connected'
        }
        finally { $s | Stop-BastionSession }
    }

    It '-SslMode Require connects with a warning' {
        $db = $Db.Clone(); $db.Remove('SslRootCertificate')
        $c = Connect-IamPostgres -Name bastion -UserName app_iam @db -SslMode Require @Aws -WarningVariable warns 3>$null
        try {
            $c.State | Should -Be 'Open'
            "$warns" | Should -Match 'not verified'
        }
        finally { $c | Disconnect-IamPostgres }
    }
}

Describe 'Invoke-IamPostgresQuery' {
    It 'returns rows as objects with typed properties, binding parameters' {
        $row = Invoke-IamPostgresQuery -Connection $Conn -Query 'select id, name, port from seed_items where id = @id' -Parameters @{ id = 2 }
        $row.name | Should -Be 'bravo'
        $row.id | Should -BeOfType ([int])
        $row.PSObject.Properties.Name | Should -Be @('id', 'name', 'port')
    }

    It 'returns affected rows with -NonQuery' {
        Invoke-IamPostgresQuery -Connection $Conn -Query "insert into iam_notes (body) values ('a'), ('b'), ('c')" -NonQuery | Should -Be 3
        Invoke-IamPostgresQuery -Connection $Conn -Query "delete from iam_notes where body in ('a', 'b')" -NonQuery | Should -Be 2
    }

    It 'reports PostgreSQL errors as ErrorRecords with the SQLSTATE: the user cannot do what was not granted' {
        Invoke-IamPostgresQuery -Connection $Conn -Query 'select * from secret_stuff' -ErrorVariable errs -ErrorAction SilentlyContinue | Should -BeNullOrEmpty
        $errs[0].FullyQualifiedErrorId | Should -BeLike 'DatabaseQueryFailed,*'
        $errs[0].CategoryInfo.Category | Should -Be 'PermissionDenied'
        $errs[0].Exception.SqlState | Should -Be '42501'
        Invoke-IamPostgresQuery -Connection $Conn -Query 'create table mine (x int)' -ErrorVariable errs2 -ErrorAction SilentlyContinue
        $errs2[0].Exception.SqlState | Should -Be '42501'
    }

    It 'rolls the whole call back with -Transaction when a statement fails' {
        $before = (Invoke-IamPostgresQuery -Connection $Conn -Query 'select count(*) as n from iam_notes').n
        Invoke-IamPostgresQuery -Connection $Conn -Transaction -Query "insert into iam_notes (body) values ('tx'); insert into iam_notes (body) values (null)" -ErrorAction SilentlyContinue -ErrorVariable errs
        $errs[0].Exception.SqlState | Should -Be '23502'
        (Invoke-IamPostgresQuery -Connection $Conn -Query 'select count(*) as n from iam_notes').n | Should -Be $before
    }

    It 'runs a file with -InputFile' {
        $file = Join-Path ([IO.Path]::GetTempPath()) ("bt-" + [guid]::NewGuid().ToString('n') + '.sql')
        Set-Content $file "insert into iam_notes (body) values ('from-file');`nselect body from iam_notes where body = 'from-file';"
        try { (Invoke-IamPostgresQuery -Connection $Conn -InputFile $file).body | Should -Be 'from-file' }
        finally { Remove-Item $file }
    }

    It 'streams a million rows through the pipeline' {
        $count = Invoke-IamPostgresQuery -Connection $Conn -Query 'select g from generate_series(1, 1000000) g' | Measure-Object
        $count.Count | Should -Be 1000000
    }

    It 'keeps column order, names (repeated and unnamed), types and NULLs, across result sets' {
        $rows = @(Invoke-IamPostgresQuery -Connection $Conn -Query @'
select 1::int as a, 'x'::text as b, null::int as c, 2::bigint as a, 3 as "A", 1.5, true as flag, '[1,5)'::int4range as r, null::text as t;
select 'second' as z where true; select 1 as never where false; select 'third' as z
'@)
        $rows.Count | Should -Be 3
        $rows[0].PSObject.Properties.Name | Should -Be @('a', 'b', 'c', 'a2', 'A3', 'Column6', 'flag', 'r', 't')
        $rows[0].a | Should -BeOfType ([int])
        $rows[0].b | Should -BeExactly 'x'
        $rows[0].PSObject.Properties['c'].Value | Should -Be $null
        $rows[0].PSObject.Properties['t'].Value | Should -Be $null
        $rows[0].a2 | Should -BeOfType ([long])
        $rows[0].A3 | Should -Be 3
        $rows[0].Column6 | Should -BeOfType ([decimal])
        $rows[0].flag | Should -BeTrue
        $rows[0].r | Should -BeOfType ([string])   # an Npgsql type leaves the module as text
        $rows[0].r | Should -Be '[1,5)'
        $rows[0].PSObject.TypeNames[0] | Should -Be 'System.Management.Automation.PSCustomObject'
        $rows[1].PSObject.Properties.Name | Should -Be @('z')
        $rows[1].z | Should -Be 'second'
        $rows[2].z | Should -Be 'third'
    }

    It 'returns many columns, rows in order across batches, and nothing for an empty result' {
        $columns = (1..300 | ForEach-Object { "$_ as c$_" }) -join ', '
        $wide = Invoke-IamPostgresQuery -Connection $Conn -Query "select $columns"
        $wide.PSObject.Properties.Name.Count | Should -Be 300
        $wide.c300 | Should -Be 300
        $ordered = Invoke-IamPostgresQuery -Connection $Conn -Query 'select g from generate_series(1, 5000) g order by g'
        ($ordered.g -join ',') | Should -Be ((1..5000) -join ',')
        Invoke-IamPostgresQuery -Connection $Conn -Query 'select 1 as x where false' -ErrorVariable errs | Should -BeNullOrEmpty
        $errs | Should -BeNullOrEmpty
    }

    It 'writes the rows before an error in the middle of the stream, then the error' {
        $rows = Invoke-IamPostgresQuery -Connection $Conn -Query 'select 1 / (3000 - g) as x from generate_series(1, 5000) g' -ErrorVariable errs -ErrorAction SilentlyContinue
        @($rows).Count | Should -Be 2999
        $errs[0].Exception.SqlState | Should -Be '22012'
    }

    It 'sends the first rows on while the query is still running' {
        # Seven 6 KB rows (past the server's 8 KB send buffer, fewer than a batch), then a row that waits for a gate
        # this pipeline opens when the first row reaches it: if rows were held back until the query ends, the gate
        # would only time out.
        $gate = 'first-' + [guid]::NewGuid().ToString('n')
        $script:opened = $false
        $rows = Invoke-IamPostgresQuery -Connection $Conn -Query "select g, repeat('x', 6000) as pad, case when g = 8 then stream_gate('$gate', 300) end as gate from generate_series(1, 8) g" |
            ForEach-Object {
                if (-not $script:opened) { Invoke-AdminSql "insert into stream_gates values ('$gate')" | Out-Null; $script:opened = $true }
                $_
            }
        @($rows).Count | Should -Be 8
        $rows[7].gate | Should -Be 'opened'
    }

    It 'stops the query on the server when the pipeline is stopped (Ctrl-C) mid-stream' {
        $gate = 'stop-' + [guid]::NewGuid().ToString('n')
        $ps = [powershell]::Create()
        try {
            $null = $ps.AddScript({
                    param($ModulePath, $Connection, $Sql)
                    Import-Module $ModulePath
                    Invoke-IamPostgresQuery -Connection $Connection -Query $Sql
                }).AddArgument((Get-TestModulePath)).AddArgument($Conn).AddArgument("select g, repeat('x', 6000) as pad, case when g = 8 then stream_gate('$gate', 300) end as gate from generate_series(1, 8) g")
            $output = [System.Management.Automation.PSDataCollection[psobject]]::new()
            $async = $ps.BeginInvoke([System.Management.Automation.PSDataCollection[psobject]]::new(), $output)
            # Wait for the first rows: then the query waits on its gate, which nobody opens (the deadline is only a
            # safety net, far past any load).
            $deadline = [DateTime]::UtcNow.AddMinutes(4)
            while ($output.Count -eq 0 -and -not $async.IsCompleted -and [DateTime]::UtcNow -lt $deadline) { Start-Sleep -Milliseconds 20 }
            $output.Count | Should -BeGreaterThan 0
            Invoke-AdminSql "select count(*) from pg_stat_activity where query like '%stream_gate(''$gate''%' and state = 'active' and pid <> pg_backend_pid()" | Should -Be '1'
            $ps.Stop()
            $ps.InvocationStateInfo.State | Should -Be 'Stopped'
            # The server is no longer running it (cancelled, not left to time out its gate).
            Invoke-AdminSql "select count(*) from pg_stat_activity where query like '%stream_gate(''$gate''%' and state = 'active' and pid <> pg_backend_pid()" | Should -Be '0'
            # The connection goes on.
            (Invoke-IamPostgresQuery -Connection $Conn -Query 'select 7 as n').n | Should -Be 7
        }
        finally {
            $ps.Dispose()
        }
    }

    It 'lets Select-Object -First end a long stream, and the connection goes on' {
        $first = Invoke-IamPostgresQuery -Connection $Conn -Query 'select g from generate_series(1, 200000) g' | Select-Object -First 3
        $first.g | Should -Be @(1, 2, 3)
        (Invoke-IamPostgresQuery -Connection $Conn -Query 'select 8 as n').n | Should -Be 8
    }

    It 'times out with -CommandTimeout' {
        Invoke-IamPostgresQuery -Connection $Conn -Query 'select pg_sleep(5)' -CommandTimeout 1 -ErrorVariable errs -ErrorAction SilentlyContinue
        $errs[0].FullyQualifiedErrorId | Should -BeLike 'DatabaseQueryFailed,*'
    }
}

Describe 'psql through the tunnel (-Interactive)' {
    It 'runs psql with the token in its own environment only, and ends the tunnel after' {
        Remove-Item env:PGPASSWORD -ErrorAction SilentlyContinue
        $r = Invoke-ChildPwsh -Script @"
Import-Module '$(Get-TestModulePath)'
Connect-IamPostgres -Name bastion -UserName app_iam -DbHost '$($Rds.endpoint)' -Database '$($Pg.database)' -SslRootCertificate '$($Rds.caBundle)' -AccessKey '$($Aws.AccessKey)' -SecretKey '$($Aws.SecretKey)' -Region '$($Aws.Region)' -EndpointUrl '$($Aws.EndpointUrl)' -Interactive -PsqlArgument @('-X', '-c', '\conninfo')
'EXIT=' + `$LASTEXITCODE
'PGPASSWORD=[' + `$env:PGPASSWORD + ']'
'SESSIONS=' + @(Get-BastionSession).Count
"@
        $r.Output | Should -Match 'as user "app_iam" on host "[^"]+" \(address "127\.0\.0\.1"\)'
        $r.Output | Should -Match 'SSL connection \(protocol: TLS'
        $r.Output | Should -Match 'EXIT=0'
        $r.Output | Should -Match 'PGPASSWORD=\[\]'
        $r.Output | Should -Match 'SESSIONS=0'
        $env:PGPASSWORD | Should -BeNullOrEmpty
    }

    It 'gives psql its arguments exactly: backslashes, spaces and double quotes are not changed' {
        $r = Invoke-ChildPwsh -Script @"
Import-Module '$(Get-TestModulePath)'
Connect-IamPostgres -Name bastion -UserName app_iam -DbHost '$($Rds.endpoint)' -Database '$($Pg.database)' -SslRootCertificate '$($Rds.caBundle)' -AccessKey '$($Aws.AccessKey)' -SecretKey '$($Aws.SecretKey)' -Region '$($Aws.Region)' -EndpointUrl '$($Aws.EndpointUrl)' -Interactive -PsqlArgument @('-X', '-At', '-c', '\echo one  two', '-c', 'select ''a\b  "c" z\'' as v')
'EXIT=' + `$LASTEXITCODE
"@
        $r.Output | Should -Match 'EXIT=0'
        $r.Output | Should -Match '(?m)^one two\r?$'
        $r.Output | Should -Match '(?m)^a\\b  "c" z\\\r?$'
    }

    It 'says clearly when psql is missing' {
        { Connect-IamPostgres -Name bastion -UserName app_iam @Db @Aws -Interactive -PsqlPath /nonexistent/psql -ErrorAction Stop } | Should -Throw -ErrorId 'PsqlNotFound,*'
        @(Get-BastionSession | Where-Object RemoteHost -eq $Rds.endpoint).Count | Should -Be 1   # only the shared one
    }
}

Describe 'Disconnect-IamPostgres' {
    It 'closes the pool and the tunnel it opened' {
        $c = Connect-IamPostgres -Name bastion -UserName app_iam @Db @Aws
        $sessionId = $c.SessionId
        $c | Disconnect-IamPostgres
        $c.State | Should -Be 'Closed'
        Get-BastionSession | Where-Object SessionId -eq $sessionId | Should -BeNullOrEmpty
        Invoke-IamPostgresQuery -Connection $c -Query 'select 1' -ErrorVariable errs -ErrorAction SilentlyContinue
        $errs[0].FullyQualifiedErrorId | Should -BeLike 'DatabaseConnectionClosed,*'
    }
}

Describe 'Grant-RdsIamUser and Revoke-RdsIamUser' {
    BeforeAll {
        $script:Admin = [pscredential]::new($Pg.user, (ConvertTo-SecureString $Pg.password -AsPlainText -Force))
        $script:Grant = @{ Name = 'bastion'; DbHost = $Rds.endpoint; Database = $Pg.database; SslRootCertificate = $Rds.caBundle; Credential = $Admin }
    }

    It 'creates an IAM user in one transaction, gives the IAM policy, and changes nothing the second time' {
        $g = Grant-RdsIamUser -UserName app_reader -Access ReadOnly -DbiResourceId db-ABCDEFGHIJKLMNOP -AccountId 123456789012 @Grant @Aws
        $g | Should -BeOfType ([BastionTools.RdsIamGrant])
        $g.Changed | Should -BeTrue
        $g.Changes -join "`n" | Should -Match 'create role app_reader'
        $g.Sql -join "`n" | Should -Match 'GRANT rds_iam TO app_reader'
        $g.ResourceArn | Should -Be 'arn:aws:rds-db:us-west-2:123456789012:dbuser:db-ABCDEFGHIJKLMNOP/app_reader'
        ($g.PolicyJson | ConvertFrom-Json).Statement[0].Action | Should -Be 'rds-db:connect'
        Invoke-AdminSql "select count(*) from pg_auth_members m join pg_roles r on r.oid = m.member join pg_roles g on g.oid = m.roleid where r.rolname = 'app_reader' and g.rolname = 'rds_iam'" | Should -Be '1'

        $again = Grant-RdsIamUser -UserName app_reader -Access ReadOnly @Grant @Aws
        $again.Changed | Should -BeFalse
        $again.Summary | Should -Match 'No changes'
    }

    It 'lets the user log in with IAM and do what was granted, and nothing more' {
        $c = Connect-IamPostgres -Name bastion -UserName app_reader @Db @Aws
        try {
            (Invoke-IamPostgresQuery -Connection $c -Query 'select count(*) as n from seed_items').n | Should -Be 3
            Invoke-IamPostgresQuery -Connection $c -Query "insert into seed_items (id, name, port) values (99, 'x', 1)" -NonQuery -ErrorVariable errs -ErrorAction SilentlyContinue
            $errs[0].Exception.SqlState | Should -Be '42501'
        }
        finally { $c | Disconnect-IamPostgres }
    }

    It '-WhatIf prints the exact SQL and executes nothing' {
        $r = Invoke-ChildPwsh -Script @"
Import-Module '$(Get-TestModulePath)'
`$admin = [pscredential]::new('$($Pg.user)', (ConvertTo-SecureString '$($Pg.password)' -AsPlainText -Force))
Grant-RdsIamUser -UserName whatif_user -Access ReadWrite -Name bastion -DbHost '$($Rds.endpoint)' -Database '$($Pg.database)' -SslRootCertificate '$($Rds.caBundle)' -Credential `$admin -AccessKey '$($Aws.AccessKey)' -SecretKey '$($Aws.SecretKey)' -Region '$($Aws.Region)' -EndpointUrl '$($Aws.EndpointUrl)' -WhatIf
"@
        $r.Output | Should -Match 'What if:'
        $r.Output | Should -Match 'CREATE ROLE whatif_user LOGIN'
        # The script is printed on its own, not inside the ShouldProcess text.
        ($r.Output -split "`n" | Where-Object { $_ -match 'What if:' }) -join "`n" | Should -Not -Match 'CREATE ROLE'
        $r.Output | Should -Match '(?m)^BEGIN;\r?$'
        $r.Output | Should -Match '(?m)^COMMIT;\r?$'
        $r.Output | Should -Match 'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO whatif_user'
        $r.Output | Should -Not -Match ([regex]::Escape($Pg.password))
        Invoke-AdminSql "select count(*) from pg_roles where rolname = 'whatif_user'" | Should -Be '0'
    }

    It 'quotes hostile names and refuses ones PostgreSQL would truncate' {
        $hostile = 'x"; DROP TABLE seed_items; --'
        $g = Grant-RdsIamUser -UserName $hostile @Grant @Aws
        $g.Changed | Should -BeTrue
        $g.Sql[0] | Should -Be 'CREATE ROLE "x""; DROP TABLE seed_items; --" LOGIN'
        Invoke-AdminSql "select count(*) from pg_roles where rolname = 'x""; DROP TABLE seed_items; --'" | Should -Be '1'
        Invoke-AdminSql 'select count(*) from seed_items' | Should -Be '3'
        { Grant-RdsIamUser -UserName ('u' * 64) @Grant @Aws -ErrorAction Stop } | Should -Throw -ErrorId 'SqlIdentifierInvalid,*'
    }

    It 'needs -Force to put the master user under IAM, with a warning' {
        { Grant-RdsIamUser -UserName $Pg.user @Grant @Aws -ErrorAction Stop -WarningVariable w 3>$null } | Should -Throw -ErrorId 'RdsIamGrantNeedsForce,*'
        Invoke-AdminSql "select count(*) from pg_auth_members m join pg_roles r on r.oid = m.member where r.rolname = '$($Pg.user)'" | Should -Be '0'
    }

    It 'needs -Force for an existing role with a password, saying that password login stops, and changes nothing without it' {
        Invoke-AdminSql "CREATE ROLE app_pw LOGIN PASSWORD 'app-pw-secret-1'" | Out-Null
        $err = $null
        try { Grant-RdsIamUser -UserName app_pw @Grant @Aws -ErrorAction Stop -WarningVariable w 3>$null } catch { $err = $_ }
        $err.FullyQualifiedErrorId | Should -BeLike 'RdsIamGrantNeedsForce,*'
        $err.CategoryInfo.Category | Should -Be 'SecurityError'
        "$err" | Should -Match 'already exists'
        "$err" | Should -Match 'joins rds_iam, so its password login stops working'
        "$err" | Should -Match 'Pass -Force to make these changes'
        "$w" | Should -Match 'password login stops working'
        Invoke-AdminSql "select count(*) from pg_auth_members m join pg_roles r on r.oid = m.member where r.rolname = 'app_pw'" | Should -Be '0'
        Invoke-AdminSql "select count(*) from information_schema.role_table_grants where grantee = 'app_pw'" | Should -Be '0'

        $g = Grant-RdsIamUser -UserName app_pw @Grant @Aws -Force -WarningVariable w2 3>$null
        $g.Changed | Should -BeTrue
        "$w2" | Should -Match 'password login stops working'
        Invoke-AdminSql "select pg_has_role('app_pw', 'rds_iam', 'MEMBER')" | Should -Be 't'
    }

    It 'needs -Force for an existing group role: it would gain LOGIN and its members inherit the grant' {
        Invoke-AdminSql 'CREATE ROLE app_group NOLOGIN; CREATE ROLE app_member1 LOGIN IN ROLE app_group; CREATE ROLE app_member2 NOLOGIN IN ROLE app_group' | Out-Null
        $err = $null
        try { Grant-RdsIamUser -UserName app_group @Grant @Aws -ErrorAction Stop 3>$null } catch { $err = $_ }
        $err.FullyQualifiedErrorId | Should -BeLike 'RdsIamGrantNeedsForce,*'
        "$err" | Should -Match 'gains LOGIN'
        "$err" | Should -Match 'its 2 member roles \(app_member1, app_member2\) inherit every privilege granted here'
        Invoke-AdminSql "select rolcanlogin from pg_roles where rolname = 'app_group'" | Should -Be 'f'
        Invoke-AdminSql "select has_table_privilege('app_member1', 'seed_items', 'SELECT')" | Should -Be 'f'

        (Grant-RdsIamUser -UserName app_group @Grant @Aws -Force 3>$null).Changed | Should -BeTrue
        Invoke-AdminSql "select rolcanlogin from pg_roles where rolname = 'app_group'" | Should -Be 't'
        Invoke-AdminSql "select has_table_privilege('app_member1', 'seed_items', 'SELECT')" | Should -Be 't'
    }

    It 'needs no -Force to re-grant to a role already in rds_iam with LOGIN and no members' {
        Invoke-AdminSql 'CREATE ROLE iam_ready LOGIN; GRANT rds_iam TO iam_ready' | Out-Null
        $g = Grant-RdsIamUser -UserName iam_ready -Access ReadOnly @Grant @Aws -ErrorAction Stop -WarningVariable w 3>$null
        $g.Changed | Should -BeTrue
        $w | Should -BeNullOrEmpty
        Invoke-AdminSql "select has_table_privilege('iam_ready', 'seed_items', 'SELECT')" | Should -Be 't'
    }

    It 'refuses system schemas such as pg_catalog with a clear error, before changing anything' {
        foreach ($schema in 'pg_catalog', 'information_schema', 'pg_toast', 'pg_temp_1') {
            $err = $null
            try { Grant-RdsIamUser -UserName sys_reader -Schema public, $schema @Grant @Aws -ErrorAction Stop } catch { $err = $_ }
            $err.FullyQualifiedErrorId | Should -BeLike 'RdsIamSystemSchema,*'
            $err.CategoryInfo.Category | Should -Be 'InvalidArgument'
            "$err" | Should -Match "The schema $schema is a system schema"
        }
        $err = $null
        try { Revoke-RdsIamUser -UserName app_iam -Schema pg_catalog @Grant @Aws -Confirm:$false -ErrorAction Stop } catch { $err = $_ }
        $err.FullyQualifiedErrorId | Should -BeLike 'RdsIamSystemSchema,*'
        Invoke-AdminSql "select count(*) from pg_roles where rolname = 'sys_reader'" | Should -Be '0'
    }

    It '-WhatIf prints names with newlines, ANSI escapes and U+202E as U&"..." escapes, and the run executes exactly that script' {
        Invoke-AdminSql @'
CREATE SCHEMA U&"odd\202Eschema";
CREATE TABLE U&"odd\202Eschema".U&"new\000Aline" (v int);
CREATE TABLE U&"odd\202Eschema".U&"\001B[31mred" (v int);
CREATE TABLE U&"odd\202Eschema".U&"rtl\202Eevil" (v int);
'@ | Out-Null
        $odd = 'odd' + [char]0x202E + 'schema'
        $r = Invoke-ChildPwsh -Script @"
Import-Module '$(Get-TestModulePath)'
`$PSStyle.OutputRendering = 'PlainText'
`$admin = [pscredential]::new('$($Pg.user)', (ConvertTo-SecureString '$($Pg.password)' -AsPlainText -Force))
Grant-RdsIamUser -UserName odd_reader -Schema ('odd' + [char]0x202E + 'schema') -Access ReadWrite -Name bastion -DbHost '$($Rds.endpoint)' -Database '$($Pg.database)' -SslRootCertificate '$($Rds.caBundle)' -Credential `$admin -AccessKey '$($Aws.AccessKey)' -SecretKey '$($Aws.SecretKey)' -Region '$($Aws.Region)' -EndpointUrl '$($Aws.EndpointUrl)' -WhatIf
"@
        $r.Output | Should -Match 'What if:'
        $r.Output | Should -Match ([regex]::Escape('GRANT USAGE ON SCHEMA U&"odd\202Eschema" TO odd_reader;'))
        $r.Output.IndexOf([char]0x202E) | Should -Be -1
        $r.Output.IndexOf([char]27) | Should -Be -1
        Invoke-AdminSql "select count(*) from pg_roles where rolname = 'odd_reader'" | Should -Be '0'
        $shown = [regex]::Match($r.Output, '(?ms)^BEGIN;\r?$.*?^COMMIT;\r?$').Value -replace "`r", ''

        $g = Grant-RdsIamUser -UserName odd_reader -Schema $odd -Access ReadWrite @Grant @Aws -ErrorAction Stop
        $g.Changed | Should -BeTrue
        "BEGIN;`n" + (($g.Sql | ForEach-Object { "$_;" }) -join "`n") + "`nCOMMIT;" | Should -BeExactly $shown
        Invoke-AdminSql "select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace where n.nspname = U&'odd\202Eschema' and c.relkind = 'r' and has_table_privilege('odd_reader', c.oid, 'SELECT, INSERT, UPDATE, DELETE')" | Should -Be '3'

        # Revoke names the tables: its script is escaped the same way, and runs as shown.
        Revoke-RdsIamUser -UserName odd_reader -Schema $odd -Drop @Grant @Aws -WhatIf -InformationVariable info 6>$null | Out-Null
        $script = "$info"
        $script | Should -Match ([regex]::Escape('.U&"new\000Aline"'))
        $script | Should -Match ([regex]::Escape('.U&"\001B[31mred"'))
        $script.IndexOf([char]0x202E) | Should -Be -1
        $script.IndexOf([char]27) | Should -Be -1
        $rv = Revoke-RdsIamUser -UserName odd_reader -Schema $odd -Drop @Grant @Aws -Confirm:$false -ErrorAction Stop
        "BEGIN;`n" + (($rv.Sql | ForEach-Object { "$_;" }) -join "`n") + "`nCOMMIT;" | Should -BeExactly $script
        Invoke-AdminSql "select count(*) from pg_roles where rolname = 'odd_reader'" | Should -Be '0'
    }

    It 'Revoke-RdsIamUser undoes the grant, drops the role with -Drop, and says so when there is nothing left' {
        $r = Revoke-RdsIamUser -UserName app_reader -Drop @Grant @Aws -Confirm:$false
        $r.Changed | Should -BeTrue
        $r.Sql[-1] | Should -Be 'DROP ROLE app_reader'
        Invoke-AdminSql "select count(*) from pg_roles where rolname = 'app_reader'" | Should -Be '0'
        (Revoke-RdsIamUser -UserName app_reader @Grant @Aws -Confirm:$false).Changed | Should -BeFalse
    }
}
