#Requires -Version 7.0
# Session Manager's idle session timeout is an administrator's security control: the module respects it by default,
# overrides it only with -KeepAlive, and a Connect-IamPostgres connection whose tunnel ended (the idle timeout, an
# administrator's TerminateSession) opens a new session on its next use. Real cmdlets, the sandbox's Session Manager
# (its idle timeout shortened through /control/agent; the real default is 20 minutes), the RDS-IAM double and a real
# PostgreSQL.
BeforeAll {
    Import-Module (Join-Path $PSScriptRoot 'TestHelpers.psm1') -Force
    Import-Module (Get-TestModulePath) -Force
    $script:Sandbox = Start-TestSandbox -ExtraArguments @('--rds')
    $script:Aws = $Sandbox.Aws
    $script:Pg = $Sandbox.postgres
    $script:Rds = $Sandbox.rds
    $script:Control = $Sandbox.control.TrimEnd('/')
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

    function Invoke-Control([string] $Method, [string] $Path, [string] $Body = '{}') {
        Invoke-RestMethod -Method $Method -Uri "$Control/$Path" -Body $Body -ContentType 'application/json'
    }

    function Set-IdleTimeout([int] $Milliseconds) {
        $null = Invoke-Control Put 'agent' (@{ idleSessionTimeoutMs = $Milliseconds } | ConvertTo-Json -Compress)
    }

    # Waits on a condition (never on a fixed sleep); fails with $What when it does not come true in time.
    function Wait-Until([scriptblock] $Condition, [string] $What, [int] $TimeoutSeconds = 60) {
        $deadline = [DateTime]::UtcNow.AddSeconds($TimeoutSeconds)
        while (-not (& $Condition)) {
            if ([DateTime]::UtcNow -gt $deadline) { throw "Timed out after $TimeoutSeconds s waiting for $What." }
            Start-Sleep -Milliseconds 100
        }
    }

    Invoke-AdminSql 'CREATE ROLE app_iam LOGIN; GRANT rds_iam TO app_iam; GRANT SELECT ON seed_items TO app_iam;' | Out-Null
}

AfterAll {
    Get-BastionSession | Stop-BastionSession -ErrorAction SilentlyContinue
    Stop-TestSandbox $Sandbox
}

Describe 'A Connect-IamPostgres connection whose tunnel ended' {
    AfterEach { Set-IdleTimeout 1200000 }

    It 'opens a new session on its next query after the idle session timeout, says so on Verbose, and shows it' {
        Set-IdleTimeout 3000
        $c = Connect-IamPostgres -Name bastion -UserName app_iam @Db @Aws
        try {
            $first = $c.SessionId
            Wait-Until { (Get-BastionSession -SessionId $first).ClosedErrorId } 'the idle session timeout'
            $ended = Get-BastionSession -SessionId $first
            $ended.State | Should -Be 'Closed'
            $ended.ClosedErrorId | Should -Be 'BastionSessionTimedOut'
            $ended.ClosedReason | Should -Match 'timed out due to inactivity'
            $c.State | Should -Be 'Open'   # usable: the next query reopens the tunnel

            $out = Invoke-IamPostgresQuery -Connection $c -Query 'select 40 + 2 as n, current_user as who' -Verbose 4>&1
            $rows = @($out | Where-Object { $_ -isnot [System.Management.Automation.VerboseRecord] })
            $verbose = ($out | Where-Object { $_ -is [System.Management.Automation.VerboseRecord] }) -join "`n"
            $rows[0].n | Should -Be 42
            $rows[0].who | Should -Be 'app_iam'
            $verbose | Should -Match "session $first has ended \(BastionSessionTimedOut"
            $verbose | Should -Match "now carries the connection"

            $c.SessionId | Should -Not -Be $first
            $c.TunnelReopens | Should -Be 1
            $c.LastTunnelEndErrorId | Should -Be 'BastionSessionTimedOut'
            $c.LastTunnelEndReason | Should -Match 'timed out due to inactivity'
            $c.LastTunnelReopenTime | Should -BeOfType ([datetime])
            $new = Get-BastionSession -SessionId $c.SessionId
            $new.Reopens | Should -Be 1
            $new.PreviousSessionId | Should -Be $first
            $new.PreviousEndErrorId | Should -Be 'BastionSessionTimedOut'
            $new.LocalPort | Should -Be $c.LocalPort
            # The ended session is no longer listed: the new one stands for the tunnel.
            Get-BastionSession -SessionId $first -ErrorAction SilentlyContinue | Should -BeNullOrEmpty
            (Get-BastionSession -SessionId $c.SessionId | Format-List | Out-String) | Should -Match 'Reopens\s*:\s*1'
        }
        finally { $c | Disconnect-IamPostgres }
    }

    It 'opens a new session on its next query after an administrator''s TerminateSession' {
        $c = Connect-IamPostgres -Name bastion -UserName app_iam @Db @Aws
        try {
            $first = $c.SessionId
            (Invoke-Control Post "sessions/$first/terminate").state | Should -Be 'Terminated'
            Wait-Until { (Get-BastionSession -SessionId $first).ClosedErrorId } 'the session to end'
            (Get-BastionSession -SessionId $first).ClosedErrorId | Should -Be 'BastionSessionTerminated'

            (Invoke-IamPostgresQuery -Connection $c -Query 'select count(*)::int as n from seed_items').n | Should -Be 3
            $c.SessionId | Should -Not -Be $first
            $c.TunnelReopens | Should -Be 1
            $c.LastTunnelEndErrorId | Should -Be 'BastionSessionTerminated'
            $c.State | Should -Be 'Open'
            # And it goes on through the new session.
            (Invoke-IamPostgresQuery -Connection $c -Query 'select 7 as n').n | Should -Be 7
            $c.TunnelReopens | Should -Be 1
            (Get-BastionSession -SessionId $c.SessionId | Format-Table | Out-String -Width 300) | Should -Match 'Connected \(reopened 1x\)'
        }
        finally { $c | Disconnect-IamPostgres }
    }

    It 'does not reopen a session given with -Session: the query fails with DatabaseConnectionClosed' {
        $s = Start-BastionSession -Name bastion -RemoteHost $Rds.endpoint -RemotePort $Rds.port @Aws 6>$null
        try {
            $db = $Db.Clone(); $db.Remove('DbHost')
            $c = $s | Connect-IamPostgres -DbHost $Rds.endpoint -UserName app_iam @db @Aws
            $null = Invoke-Control Post "sessions/$($s.SessionId)/terminate"
            Wait-Until { $s.ClosedErrorId } 'the session to end'
            $rows = Invoke-IamPostgresQuery -Connection $c -Query 'select 1 as n' -ErrorVariable errs -ErrorAction SilentlyContinue
            $rows | Should -BeNullOrEmpty
            $errs[0].FullyQualifiedErrorId | Should -BeLike 'DatabaseConnectionClosed,*'
            "$($errs[0])" | Should -Match 'BastionSessionTerminated'
            $c.TunnelReopens | Should -Be 0
            $c.State | Should -Be 'Closed'   # the -Session tunnel's state: nothing reopens it
            $c | Disconnect-IamPostgres
        }
        finally { $s | Stop-BastionSession -ErrorAction SilentlyContinue }
    }
}

Describe 'Start-BastionSession when the idle session timeout ends it' {
    BeforeAll { Set-IdleTimeout 3000 }
    AfterAll { Set-IdleTimeout 1200000 }

    It 'shows the end on the session: State, ClosedErrorId, ClosedReason' {
        $s = Start-BastionSession -Name bastion -RemoteHost $Rds.endpoint -RemotePort $Rds.port @Aws 6>$null
        try {
            Wait-Until { $s.State -ne 'Connected' } 'the idle session timeout'
            Wait-Until { $s.ClosedErrorId } 'the reason'
            $s.State | Should -Be 'Closed'
            $s.ClosedErrorId | Should -Be 'BastionSessionTimedOut'
            $s.ClosedReason | Should -Match 'timed out due to inactivity'
            $listed = Get-BastionSession -SessionId $s.SessionId
            $listed.ClosedErrorId | Should -Be 'BastionSessionTimedOut'
            Test-LoopbackPortRefused -Port $s.LocalPort | Should -BeTrue
        }
        finally { $s | Stop-BastionSession -ErrorAction SilentlyContinue }
    }

    It '-Wait returns with the end, as an error with ErrorId BastionSessionTimedOut' {
        $module = Get-TestModulePath
        $aws = $Sandbox.Aws
        $script = @"
Import-Module '$module'
`$aws = @{ AccessKey = '$($aws.AccessKey)'; SecretKey = '$($aws.SecretKey)'; Region = '$($aws.Region)'; EndpointUrl = '$($aws.EndpointUrl)' }
`$s = Start-BastionSession -Name bastion -RemoteHost '$($Rds.endpoint)' -RemotePort $($Rds.port) @aws -Wait -ErrorVariable failures -ErrorAction SilentlyContinue 6>`$null
'STATE=' + `$s.State + '|' + `$s.ClosedErrorId
'ERRORS=' + ((`$failures | ForEach-Object { `$_.FullyQualifiedErrorId + '|' + `$_.CategoryInfo.Category + '|' + `$_.Exception.Message }) -join ';;')
"@
        $result = Invoke-ChildPwsh -Script $script -TimeoutSeconds 120
        $result.ExitCode | Should -Be 0 -Because $result.Error
        $result.Output | Should -Match 'STATE=Closed\|BastionSessionTimedOut'
        $result.Output | Should -Match 'ERRORS=BastionSessionTimedOut,BastionTools.Commands.StartBastionSessionCommand\|OperationTimeout\|.*timed out due to inactivity'
    }
}

Describe '-KeepAlive' {
    # The shortest idle session timeout an administrator can set (1 minute); -KeepAlive sends a no-op after 30 s of silence.
    BeforeAll { Set-IdleTimeout 60000 }
    AfterAll { Set-IdleTimeout 1200000 }

    It 'keeps an idle tunnel past the idle session timeout, while one without it ends' {
        # The kept one first: it has been idle at least as long as the other when that one times out.
        $kept = Connect-IamPostgres -Name bastion -UserName app_iam @Db @Aws -KeepAlive
        $plain = Connect-IamPostgres -Name bastion -UserName app_iam @Db @Aws
        try {
            $keptId = $kept.SessionId
            $plainId = $plain.SessionId
            Wait-Until { (Get-BastionSession -SessionId $plainId).ClosedErrorId } 'the plain tunnel to time out' 150
            (Get-BastionSession -SessionId $plainId).ClosedErrorId | Should -Be 'BastionSessionTimedOut'

            $kept.Session.State | Should -Be 'Connected'
            $kept.Session.ClosedErrorId | Should -BeNullOrEmpty
            $agent = Invoke-RestMethod -Uri "$Control/sessions/$keptId"
            $agent.idleTimeouts | Should -Be 0
            $agent.smuxNopsReceived | Should -BeGreaterOrEqual 1
            (Invoke-IamPostgresQuery -Connection $kept -Query 'select 5 as n').n | Should -Be 5
            $kept.SessionId | Should -Be $keptId
            $kept.TunnelReopens | Should -Be 0
        }
        finally {
            $kept | Disconnect-IamPostgres
            $plain | Disconnect-IamPostgres
        }
    }

    It 'is a switch of Start-BastionSession''s tunnels and of the database cmdlets, not of shells' {
        foreach ($name in 'Connect-IamPostgres', 'Grant-RdsIamUser', 'Revoke-RdsIamUser') {
            (Get-Command $name).Parameters['KeepAlive'].SwitchParameter | Should -BeTrue -Because $name
        }
        $sets = (Get-Command Start-BastionSession).Parameters['KeepAlive'].ParameterSets.Keys
        $sets | Should -Contain 'TargetRemoteHost'
        $sets | Should -Contain 'NamePort'
        $sets | Should -Not -Contain 'TargetShell'
    }
}
