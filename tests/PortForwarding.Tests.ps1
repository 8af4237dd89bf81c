#Requires -Version 7.0
# Start-BastionSession port forwarding end to end: the module's own data channel, the sandbox's Session Manager
# double (agent behaviour) and a real PostgreSQL on loopback, used through psql.
BeforeAll {
    Import-Module (Join-Path $PSScriptRoot 'TestHelpers.psm1') -Force
    Import-Module (Get-TestModulePath) -Force
    $script:Sandbox = Start-TestSandbox -ExtraArguments @('--postgres')
    $script:Aws = $Sandbox.Aws
    $script:Pg = $Sandbox.postgres
    $script:Endpoint = 'demo.c0ffee123456.us-west-2.rds.amazonaws.com'

    function Invoke-Psql([int] $Port, [string] $Sql) {
        $env:PGPASSWORD = $Pg.password
        try {
            $out = & psql -X -A -t -v ON_ERROR_STOP=1 -h 127.0.0.1 -p $Port -U $Pg.user -d $Pg.database -c $Sql 2>&1
            [pscustomobject]@{ ExitCode = $LASTEXITCODE; Output = ($out -join "`n") }
        }
        finally { Remove-Item env:PGPASSWORD -ErrorAction SilentlyContinue }
    }
}

AfterAll {
    Get-BastionSession | Stop-BastionSession -ErrorAction SilentlyContinue
    Stop-TestSandbox $Sandbox
}

Describe 'Start-BastionSession -RemoteHost (multiplexed agent)' {
    BeforeAll {
        $script:Session = Start-BastionSession -Target i-0a1b2c3d4e5f60001 -RemoteHost $Endpoint -RemotePort $Pg.port @Aws 6>$null
    }
    AfterAll { if ($Session) { $Session | Stop-BastionSession } }

    It 'returns a BastionSession at once, listening on 127.0.0.1 with an ephemeral port' {
        $Session | Should -BeOfType ([BastionTools.BastionSession])
        $Session.State | Should -Be 'Connected'
        $Session.Mode | Should -Be 'Multiplexed'
        $Session.LocalAddress | Should -Be '127.0.0.1'
        $Session.LocalPort | Should -BeGreaterThan 0
        $Session.Remote | Should -Be "${Endpoint}:$($Pg.port)"
        $Session.SessionId | Should -Match '^sandbox-user-[0-9a-f]+$'
        $Session.Target | Should -Be 'i-0a1b2c3d4e5f60001'
    }

    It 'says what to connect to in its first line for a human' {
        $s = Start-BastionSession -Target i-0a1b2c3d4e5f60001 -RemoteHost $Endpoint -RemotePort $Pg.port @Aws 6>&1
        try {
            $info = @($s | Where-Object { $_ -is [System.Management.Automation.InformationRecord] })
            $session = @($s | Where-Object { $_ -is [BastionTools.BastionSession] })[0]
            "$($info[0])" | Should -BeLike "Connect to 127.0.0.1:$($session.LocalPort) for ${Endpoint}:*"
        }
        finally { $session | Stop-BastionSession }
    }

    It 'carries psql to the real PostgreSQL' {
        $r = Invoke-Psql $Session.LocalPort 'select 40 + 2'
        $r.ExitCode | Should -Be 0
        $r.Output.Trim() | Should -Be '42'
    }

    It 'is listed by Get-BastionSession with live counters' {
        $s = Get-BastionSession -SessionId $Session.SessionId
        $s.TotalConnections | Should -BeGreaterOrEqual 1
        $s.BytesSent | Should -BeGreaterThan 0
        $s.BytesReceived | Should -BeGreaterThan 0
        (Get-BastionSession | Format-Table | Out-String) | Should -Match ([regex]::Escape($s.LocalEndpoint))
    }

    It 'serves 64 concurrent psql connections through one tunnel' {
        $port = $Session.LocalPort
        $password = $Pg.password; $user = $Pg.user; $database = $Pg.database
        $jobs = 1..64 | ForEach-Object {
            $n = $_
            Start-ThreadJob -ThrottleLimit 64 -ScriptBlock {
                # psql reads PGPASSWORD from its own environment block, handed to it alone.
                $psi = [System.Diagnostics.ProcessStartInfo]::new('psql')
                # A barrier in the database: each connection waits until all 64 are connected at once, then reports the count.
                $barrier = "DO `$`$ BEGIN FOR i IN 1..600 LOOP EXIT WHEN (SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bt64') >= 64; PERFORM pg_sleep(0.05); END LOOP; END `$`$; SELECT $using:n * 1000 + (SELECT count(*) FROM pg_stat_activity WHERE application_name = 'bt64')"
                foreach ($a in '-X', '-A', '-t', '-q', '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', "$using:port", '-U', $using:user, '-d', $using:database, '-c', $barrier) { $psi.ArgumentList.Add($a) }
                $psi.Environment['PGPASSWORD'] = $using:password
                $psi.Environment['PGAPPNAME'] = 'bt64'
                $psi.RedirectStandardOutput = $true; $psi.RedirectStandardError = $true
                $p = [System.Diagnostics.Process]::Start($psi)
                $out = $p.StandardOutput.ReadToEnd() + $p.StandardError.ReadToEnd()
                $p.WaitForExit()
                [pscustomobject]@{ N = $using:n; Code = $p.ExitCode; Out = $out.Trim() }
            }
        }
        $results = $jobs | Wait-Job -Timeout 120 | Receive-Job
        $jobs | Remove-Job -Force
        $results.Count | Should -Be 64
        foreach ($r in $results) {
            $r.Code | Should -Be 0 -Because "connection $($r.N): $($r.Out)"
            [int]$r.Out | Should -BeGreaterThan ($r.N * 1000) -Because "connection $($r.N) answered '$($r.Out)'"
        }
        # The first to pass the barrier saw all 64 connected at the same time.
        ($results | ForEach-Object { [int]$_.Out % 1000 } | Measure-Object -Maximum).Maximum | Should -Be 64
        $Session.TotalConnections | Should -BeGreaterOrEqual 64
    }
}

Describe 'Start-BastionSession, other ways in' {
    It 'forwards to a port of the bastion itself with -PortNumber (AWS-StartPortForwardingSession)' {
        $s = Start-BastionSession -Target i-0a1b2c3d4e5f60001 -PortNumber $Pg.port @Aws 6>$null
        try {
            $s.RemoteHost | Should -BeNullOrEmpty
            $s.Remote | Should -Be "localhost:$($Pg.port)"
            (Invoke-Psql $s.LocalPort 'select 11').Output.Trim() | Should -Be '11'
        }
        finally { $s | Stop-BastionSession }
    }

    It 'takes the bastion from Get-BastionInstance through the pipeline, on a fixed local port' {
        $free = [System.Net.Sockets.TcpListener]::new([System.Net.IPAddress]::Loopback, 0)
        $free.Start(); $port = $free.LocalEndpoint.Port; $free.Stop()
        $s = Get-BastionInstance -Name bastion @Aws | Start-BastionSession -RemoteHost $Endpoint -RemotePort $Pg.port -LocalPort $port @Aws 6>$null
        try {
            $s.Target | Should -Be 'i-0a1b2c3d4e5f60001'
            $s.LocalPort | Should -Be $port
            (Invoke-Psql $port 'select 12').Output.Trim() | Should -Be '12'
        }
        finally { $s | Stop-BastionSession }
    }

    It '-WhatIf starts nothing' {
        $before = @(Get-BastionSession).Count
        Start-BastionSession -Target i-0a1b2c3d4e5f60001 -RemoteHost $Endpoint @Aws -WhatIf | Should -BeNullOrEmpty
        @(Get-BastionSession).Count | Should -Be $before
    }

    It '-Wait holds the tunnel in the foreground until Ctrl-C, then stops it (driven in a terminal)' {
        $tmux = (Get-Command tmux -ErrorAction Stop).Source
        $name = 'btw-' + [guid]::NewGuid().ToString('n').Substring(0, 8)
        $pwsh = [Environment]::ProcessPath
        $prefix = if ([IO.Path]::GetFileNameWithoutExtension($pwsh) -eq 'dotnet') { "'$pwsh' '$(Join-Path $PSHOME 'pwsh.dll')'" } else { "'$pwsh'" }
        $script = Join-Path ([IO.Path]::GetTempPath()) "$name.ps1"
        Set-Content -Path $script -Value @"
`$env:AWS_EC2_METADATA_DISABLED = 'true'
Import-Module '$(Get-TestModulePath)'
Start-BastionSession -Target i-0a1b2c3d4e5f60001 -RemoteHost $Endpoint -RemotePort $($Pg.port) -AccessKey '$($Aws.AccessKey)' -SecretKey '$($Aws.SecretKey)' -Region '$($Aws.Region)' -EndpointUrl '$($Aws.EndpointUrl)' -Wait | Out-Null
"@
        # An interactive PowerShell: Ctrl-C stops the waiting command and gives the prompt back.
        & $tmux new-session -d -s $name -x 200 -y 30 "$prefix -NoProfile -NoExit -Command `". '$script'`""
        try {
            $deadline = [DateTime]::UtcNow.AddSeconds(30); $screen = ''
            while ([DateTime]::UtcNow -lt $deadline -and $screen -notmatch 'Connect to 127\.0\.0\.1:(\d+)') { Start-Sleep -Milliseconds 200; $screen = (& $tmux capture-pane -p -t $name) -join "`n" }
            $screen | Should -Match 'Connect to 127\.0\.0\.1:(\d+)'
            $port = [int]$Matches[1]
            (Invoke-Psql $port 'select 13').Output.Trim() | Should -Be '13'
            & $tmux send-keys -t $name C-c
            Start-Sleep -Milliseconds 500
            & $tmux send-keys -t $name 'Write-Host "AFTER-WAIT sessions=$(@(Get-BastionSession).Count)"' Enter
            $deadline = [DateTime]::UtcNow.AddSeconds(30)
            while ([DateTime]::UtcNow -lt $deadline -and $screen -notmatch 'AFTER-WAIT') { Start-Sleep -Milliseconds 200; $screen = (& $tmux capture-pane -p -t $name) -join "`n" }
            $screen | Should -Match '(?m)^AFTER-WAIT sessions=0'
            Test-LoopbackPortRefused -Port $port | Should -BeTrue
        }
        finally {
            & $tmux kill-session -t $name 2>$null
            Remove-Item $script -ErrorAction SilentlyContinue
        }
    }
}

Describe 'Start-BastionSession against an old agent (basic mode)' {
    It 'runs sequential connections, one at a time' {
        $s = Start-BastionSession -Name bastion-legacy -RemoteHost $Endpoint -RemotePort $Pg.port @Aws 6>$null
        try {
            $s.Mode | Should -Be 'Basic'
            foreach ($i in 1..3) {
                $r = Invoke-Psql $s.LocalPort "select $i"
                $r.ExitCode | Should -Be 0 -Because $r.Output
                $r.Output.Trim() | Should -Be "$i"
            }
            $s.TotalConnections | Should -Be 3
        }
        finally { $s | Stop-BastionSession }
    }
}

Describe 'Failures' {
    It 'refuses an offline bastion before any session is started, as a non-terminating error' {
        $out = Start-BastionSession -Name bastion-offline -RemoteHost $Endpoint @Aws -ErrorVariable errs -ErrorAction SilentlyContinue 6>$null
        $out | Should -BeNullOrEmpty
        $errs[0].FullyQualifiedErrorId | Should -BeLike 'BastionTargetOffline,*'
        $errs[0].CategoryInfo.Category | Should -Be 'ResourceUnavailable'
    }

    It 'fails only the connection whose destination port is closed; the tunnel stays up for others' {
        $closed = [System.Net.Sockets.TcpListener]::new([System.Net.IPAddress]::Loopback, 0)
        $closed.Start(); $deadPort = $closed.LocalEndpoint.Port; $closed.Stop()
        $dead = Start-BastionSession -Target i-0a1b2c3d4e5f60001 -RemoteHost $Endpoint -RemotePort $deadPort @Aws 6>$null
        $good = Start-BastionSession -Target i-0a1b2c3d4e5f60001 -RemoteHost $Endpoint -RemotePort $Pg.port @Aws 6>$null
        try {
            $r = Invoke-Psql $dead.LocalPort 'select 1'
            $r.ExitCode | Should -Not -Be 0
            $r.Output | Should -Match 'server closed the connection|Connection reset|could not receive|terminated'
            $dead.State | Should -Be 'Connected'
            $dead.FailedConnections | Should -BeGreaterOrEqual 1
            (Invoke-Psql $good.LocalPort 'select 7').Output.Trim() | Should -Be '7'
        }
        finally { $dead, $good | Stop-BastionSession }
    }

    It 'refuses a local port that is in use with LocalPortUnavailable' {
        $busy = [System.Net.Sockets.TcpListener]::new([System.Net.IPAddress]::Loopback, 0)
        $busy.Start()
        try {
            $out = Start-BastionSession -Target i-0a1b2c3d4e5f60001 -RemoteHost $Endpoint -LocalPort $busy.LocalEndpoint.Port @Aws -ErrorVariable errs -ErrorAction SilentlyContinue 6>$null
            $out | Should -BeNullOrEmpty
            $errs[0].FullyQualifiedErrorId | Should -BeLike 'LocalPortUnavailable,*'
        }
        finally { $busy.Stop() }
    }
}

Describe 'Stop-BastionSession' {
    It 'leaves no listener, no open socket, terminates the session, and is gone from Get-BastionSession' {
        $s = Start-BastionSession -Target i-0a1b2c3d4e5f60001 -RemoteHost $Endpoint -RemotePort $Pg.port @Aws 6>$null
        (Invoke-Psql $s.LocalPort 'select 1').ExitCode | Should -Be 0
        $port = $s.LocalPort
        $s | Stop-BastionSession
        $s.State | Should -Be 'Closed'
        Get-BastionSession | Where-Object SessionId -eq $s.SessionId | Should -BeNullOrEmpty
        Test-LoopbackPortRefused -Port $port | Should -BeTrue
        # No socket of this process is left on the tunnel's port, in any state but TIME_WAIT.
        $left = & ss -tanpH "( sport = :$port or dport = :$port )" 2>$null | Where-Object { $_ -match "pid=$PID," -and $_ -notmatch 'TIME-WAIT' }
        $left | Should -BeNullOrEmpty
    }

    It '-WhatIf stops nothing' {
        $s = Start-BastionSession -Target i-0a1b2c3d4e5f60001 -RemoteHost $Endpoint -RemotePort $Pg.port @Aws 6>$null
        try {
            $s | Stop-BastionSession -WhatIf
            $s.State | Should -Be 'Connected'
            (Invoke-Psql $s.LocalPort 'select 3').Output.Trim() | Should -Be '3'
        }
        finally { $s | Stop-BastionSession }
    }
}
