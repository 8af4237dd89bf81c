#Requires -Version 7.0
# The tunnel of a PowerShell process through what a laptop and a hostile peer do to it: the process frozen for 90 s
# (SIGSTOP/SIGCONT), a service side that sends a never-ending message, and a network outage longer than
# -ReconnectTimeoutSec. The module runs in a pwsh of its own (the "client"); psql and the sandbox's controls are driven
# from here, so the client can be frozen while the test goes on.
BeforeAll {
    Import-Module (Join-Path $PSScriptRoot 'TestHelpers.psm1') -Force
    $script:Sandbox = Start-TestSandbox -ExtraArguments @('--postgres', '--fault-proxy')
    $script:Pg = $Sandbox.postgres
    $script:Endpoint = 'demo.c0ffee123456.us-west-2.rds.amazonaws.com'
    $script:Control = $Sandbox.control.TrimEnd('/')

    # A pwsh that holds a tunnel and answers commands on stdin, one per line: 'status' prints STATUS=<json>,
    # 'restart' stops the session and starts a new one (PORT=<n> again), 'quit' stops it and exits.
    function Start-TunnelClient([string[]] $ExtraArguments = @()) {
        $module = Get-TestModulePath
        $aws = $Sandbox.Aws
        $extra = ($ExtraArguments | ForEach-Object { "'$_'" }) -join ', '
        $script = @"
`$ErrorActionPreference = 'Stop'
Import-Module '$module'
`$aws = @{ AccessKey = '$($aws.AccessKey)'; SecretKey = '$($aws.SecretKey)'; Region = '$($aws.Region)'; EndpointUrl = '$($aws.EndpointUrl)' }
`$extra = @($extra)
function Open { Start-BastionSession -Target i-0a1b2c3d4e5f60001 -RemoteHost '$Endpoint' -RemotePort $($Pg.port) @aws @extra 6>`$null }
`$s = Open
[Console]::Out.WriteLine("PORT=`$(`$s.LocalPort)"); [Console]::Out.Flush()
while (`$null -ne (`$line = [Console]::In.ReadLine())) {
    switch (`$line) {
        'status' {
            `$x = Get-BastionSession -SessionId `$s.SessionId -ErrorAction SilentlyContinue
            if (-not `$x) { `$x = `$s }
            `$o = [pscustomobject]@{ State = `$x.State; Reconnects = `$x.Reconnects; Reason = `$x.ClosedReason; Pid = `$PID }
            [Console]::Out.WriteLine('STATUS=' + (`$o | ConvertTo-Json -Compress)); [Console]::Out.Flush()
        }
        'restart' {
            `$s | Stop-BastionSession -ErrorAction SilentlyContinue
            `$s = Open
            [Console]::Out.WriteLine("PORT=`$(`$s.LocalPort)"); [Console]::Out.Flush()
        }
        'quit' { `$s | Stop-BastionSession -ErrorAction SilentlyContinue; exit 0 }
    }
}
"@
        $file = Join-Path ([IO.Path]::GetTempPath()) ("bt-tunnel-" + [guid]::NewGuid().ToString('n') + '.ps1')
        Set-Content -Path $file -Value $script -Encoding utf8
        $psi = [System.Diagnostics.ProcessStartInfo]::new([Environment]::ProcessPath)
        if ([IO.Path]::GetFileNameWithoutExtension($psi.FileName) -eq 'dotnet') { $psi.ArgumentList.Add((Join-Path $PSHOME 'pwsh.dll')) }
        foreach ($a in '-NoProfile', '-NonInteractive', '-File', $file) { $psi.ArgumentList.Add($a) }
        $psi.RedirectStandardInput = $true; $psi.RedirectStandardOutput = $true; $psi.RedirectStandardError = $true
        $psi.UseShellExecute = $false
        $p = [System.Diagnostics.Process]::Start($psi)
        $errors = [System.Text.StringBuilder]::new()
        $null = Register-ObjectEvent -InputObject $p -EventName ErrorDataReceived -MessageData $errors -Action { if ($EventArgs.Data) { [void] $Event.MessageData.AppendLine($EventArgs.Data) } }
        $p.BeginErrorReadLine()
        $client = [pscustomobject]@{ Process = $p; File = $file; Errors = $errors; Port = 0 }
        $client.Port = [int] (Read-ClientLine $client 'PORT=' 60)
        $client
    }

    function Read-ClientLine($Client, [string] $Prefix, [int] $TimeoutSeconds = 30) {
        while ($true) {
            $task = $Client.Process.StandardOutput.ReadLineAsync()
            if (-not $task.Wait($TimeoutSeconds * 1000)) { throw "No '$Prefix' line from the tunnel process within $TimeoutSeconds s. stderr: $($Client.Errors)" }
            if ($null -eq $task.Result) { throw "The tunnel process ended (exit $($Client.Process.ExitCode)). stderr: $($Client.Errors)" }
            if ($task.Result.StartsWith($Prefix)) { return $task.Result.Substring($Prefix.Length) }
        }
    }

    function Get-ClientStatus($Client) {
        $Client.Process.StandardInput.WriteLine('status'); $Client.Process.StandardInput.Flush()
        Read-ClientLine $Client 'STATUS=' | ConvertFrom-Json
    }

    function Stop-TunnelClient($Client) {
        if (-not $Client) { return }
        try { $Client.Process.StandardInput.WriteLine('quit'); $Client.Process.StandardInput.Flush() } catch { }
        if (-not $Client.Process.WaitForExit(20000)) { try { $Client.Process.Kill($true) } catch { } }
        Remove-Item $Client.File -ErrorAction SilentlyContinue
    }

    # psql kept open on a pipe: one connection, queries sent one line at a time.
    function Start-Psql([int] $Port) {
        $psi = [System.Diagnostics.ProcessStartInfo]::new('psql')
        foreach ($a in '-X', '-A', '-t', '-q', '-h', '127.0.0.1', '-p', "$Port", '-U', $Pg.user, '-d', $Pg.database) { $psi.ArgumentList.Add($a) }
        $psi.Environment['PGPASSWORD'] = $Pg.password
        $psi.RedirectStandardInput = $true; $psi.RedirectStandardOutput = $true; $psi.RedirectStandardError = $true
        $psi.UseShellExecute = $false
        $p = [System.Diagnostics.Process]::Start($psi)
        $errors = [System.Text.StringBuilder]::new()
        $null = Register-ObjectEvent -InputObject $p -EventName ErrorDataReceived -MessageData $errors -Action { if ($EventArgs.Data) { [void] $Event.MessageData.AppendLine($EventArgs.Data) } }
        $p.BeginErrorReadLine()
        [pscustomobject]@{ Process = $p; Errors = $errors }
    }

    function Send-Query($Psql, [string] $Sql) {
        $Psql.Process.StandardInput.WriteLine($Sql); $Psql.Process.StandardInput.Flush()
    }

    function Receive-Answer($Psql, [int] $TimeoutSeconds = 60) {
        $task = $Psql.Process.StandardOutput.ReadLineAsync()
        if (-not $task.Wait($TimeoutSeconds * 1000)) { throw "psql gave no answer within $TimeoutSeconds s. stderr: $($Psql.Errors)" }
        if ($null -eq $task.Result) { throw "psql ended: $($Psql.Errors)" }
        $task.Result.Trim()
    }

    function Stop-Psql($Psql) {
        if (-not $Psql) { return }
        try { $Psql.Process.StandardInput.Close() } catch { }
        if (-not $Psql.Process.WaitForExit(10000)) { try { $Psql.Process.Kill() } catch { } }
    }

    function Invoke-Control([string] $Path, [string] $Body = '{}') {
        Invoke-RestMethod -Method Post -Uri "$Control/$Path" -Body $Body -ContentType 'application/json'
    }
}

AfterAll {
    Stop-TestSandbox $Sandbox
}

Describe 'A tunnel whose process is frozen for 90 s' {
    It 'carries on: the same psql connection answers, including a query sent during the freeze' {
        $client = Start-TunnelClient
        $psql = Start-Psql $client.Port
        try {
            Send-Query $psql 'select pg_backend_pid();'
            $backend = Receive-Answer $psql
            $backend | Should -Match '^\d+$'

            # SIGSTOP: the client process stops dead (threads, timers, sockets unread) while its TCP connections stay up.
            & kill -STOP $client.Process.Id
            $LASTEXITCODE | Should -Be 0
            try {
                Start-Sleep -Seconds 30
                # Sent while the tunnel is frozen: it waits in the kernel's buffers.
                Send-Query $psql 'select 43 + 1;'
                Start-Sleep -Seconds 60
            }
            finally {
                & kill -CONT $client.Process.Id
            }
            Receive-Answer $psql 60 | Should -Be '44'
            Send-Query $psql 'select pg_backend_pid();'
            Receive-Answer $psql | Should -Be $backend
            (Get-ClientStatus $client).State | Should -BeIn 'Connected', 'Reconnecting'
        }
        finally {
            Stop-Psql $psql
            Stop-TunnelClient $client
        }
    }
}

Describe 'A service side that sends a message without end' {
    It 'ends that session with a clear reason, and the PowerShell host lives on and starts a new one' {
        $client = Start-TunnelClient
        try {
            # Invoke-RestMethod writes a JSON array as one object: enumerate it.
            $all = Invoke-RestMethod -Uri "$Control/sessions"
            $session = $all | ForEach-Object { $_ } | Where-Object { $_.state -eq 'Connected' } | Select-Object -Last 1
            $session | Should -Not -BeNullOrEmpty
            # 64 MiB in fragments, never finished: the client must give up at its 1 MiB bound, not buffer it.
            $null = Invoke-Control "sessions/$($session.sessionId)/inject/endless-fragments" '{"bytes":67108864}'
            $deadline = [DateTime]::UtcNow.AddSeconds(60)
            do { $status = Get-ClientStatus $client } until ($status.State -eq 'Failed' -or [DateTime]::UtcNow -gt $deadline)
            $status.State | Should -Be 'Failed'
            $status.Reason | Should -Match 'larger than the 1024 KiB'
            # The host is the same process, and it works.
            $status.Pid | Should -Be $client.Process.Id
            $client.Process.StandardInput.WriteLine('restart'); $client.Process.StandardInput.Flush()
            $port = [int] (Read-ClientLine $client 'PORT=' 60)
            $psql = Start-Psql $port
            try {
                Send-Query $psql 'select 6 * 7;'
                Receive-Answer $psql | Should -Be '42'
            }
            finally { Stop-Psql $psql }
        }
        finally {
            Stop-TunnelClient $client
        }
    }
}

Describe 'An outage longer than -ReconnectTimeoutSec' {
    It 'ends Start-BastionSession -Wait with BastionSessionFailed, and the listener is closed' {
        $module = Get-TestModulePath
        $aws = $Sandbox.Aws
        $portFile = Join-Path ([IO.Path]::GetTempPath()) ("bt-port-" + [guid]::NewGuid().ToString('n'))
        $verboseFile = Join-Path ([IO.Path]::GetTempPath()) ("bt-verbose-" + [guid]::NewGuid().ToString('n'))
        $script = @"
Import-Module '$module'
`$aws = @{ AccessKey = '$($aws.AccessKey)'; SecretKey = '$($aws.SecretKey)'; Region = '$($aws.Region)'; EndpointUrl = '$($aws.EndpointUrl)' }
Start-BastionSession -Target i-0a1b2c3d4e5f60001 -RemoteHost '$Endpoint' -RemotePort $($Pg.port) @aws -ReconnectTimeoutSec 5 -Wait -Verbose -ErrorVariable failures -ErrorAction SilentlyContinue 6>`$null 4>'$verboseFile' |
    ForEach-Object { Set-Content -Path '$portFile' -Value `$_.LocalPort }
'ERRORS=' + ((`$failures | ForEach-Object { `$_.FullyQualifiedErrorId + '|' + `$_.Exception.Message }) -join ';;')
"@
        $job = Start-ThreadJob -ScriptBlock { param($s) Invoke-ChildPwsh -Script $s -TimeoutSeconds 240 } -ArgumentList $script -InitializationScript ([scriptblock]::Create("Import-Module '$(Join-Path $PSScriptRoot 'TestHelpers.psm1')'"))
        try {
            $deadline = [DateTime]::UtcNow.AddSeconds(60)
            while (-not (Test-Path $portFile) -and [DateTime]::UtcNow -lt $deadline) { Start-Sleep -Milliseconds 100 }
            Test-Path $portFile | Should -BeTrue
            $port = [int] (Get-Content $portFile | Select-Object -First 1)
            # The network goes silent and stays so.
            $null = Invoke-Control 'proxy/blackout'
            $result = $job | Wait-Job -Timeout 200 | Receive-Job
            $result | Should -Not -BeNullOrEmpty
            $result.Output | Should -Match 'ERRORS=BastionSessionFailed,BastionTools.Commands.StartBastionSessionCommand\|.*could not be resumed within 5 s'
            Test-LoopbackPortRefused -Port $port | Should -BeTrue
            # While it waited, -Verbose narrated what happened.
            $verbose = Get-Content -Raw $verboseFile
            $verbose | Should -Match 'the connection is dead; resuming'
            $verbose | Should -Match 'Resuming session'
        }
        finally {
            $null = Invoke-Control 'proxy/restore'
            $job | Remove-Job -Force -ErrorAction SilentlyContinue
            Remove-Item $portFile, $verboseFile -ErrorAction SilentlyContinue
        }
    }
}
