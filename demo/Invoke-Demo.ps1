<#
.SYNOPSIS
    The BastionTools demo, run by 'build.ps1 -Task Demo': the user story as a user would type it, against the
    sandbox — local doubles of SSM, EC2 and the Session Manager data channel, in front of a real PostgreSQL.
    Nothing here reaches AWS: every endpoint is on 127.0.0.1, and the credentials are the sandbox's own.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $ModulePath,
    # BastionTools.Sandbox.dll (build.ps1 builds it to out/sandbox).
    [string] $SandboxPath = $env:BASTIONTOOLS_SANDBOX
)
$ErrorActionPreference = 'Stop'
$env:AWS_EC2_METADATA_DISABLED = 'true'

function Step([string] $Text, [scriptblock] $Block) {
    Write-Host ''
    Write-Host "PS> $Text" -ForegroundColor Yellow
    & $Block
}

if (-not $SandboxPath -or -not (Test-Path $SandboxPath)) { throw "The sandbox is not built ('$SandboxPath'): run ./build.ps1 -Task Demo." }

Write-Host 'Starting the sandbox (SSM, EC2 and Session Manager doubles on 127.0.0.1, and a throwaway PostgreSQL)...' -ForegroundColor DarkGray
$psi = [System.Diagnostics.ProcessStartInfo]::new('dotnet')
foreach ($a in $SandboxPath, '--postgres') { $psi.ArgumentList.Add($a) }
$psi.RedirectStandardInput = $true; $psi.RedirectStandardOutput = $true; $psi.RedirectStandardError = $true; $psi.UseShellExecute = $false
$sandboxProcess = [System.Diagnostics.Process]::Start($psi)
try {
    $sandbox = $sandboxProcess.StandardOutput.ReadLine() | ConvertFrom-Json
    if (-not $sandbox) { throw "The sandbox did not start: $($sandboxProcess.StandardError.ReadToEnd())" }
    $endpoint = 'demo.c0ffee123456.us-west-2.rds.amazonaws.com'

    # What a real run gets from a profile, SSO or OIDC: here the sandbox's test credentials, in this process only.
    $env:AWS_ACCESS_KEY_ID = $sandbox.accessKeyId
    $env:AWS_SECRET_ACCESS_KEY = $sandbox.secretAccessKey
    $env:AWS_REGION = $sandbox.region
    $PSDefaultParameterValues['*-Bastion*:EndpointUrl'] = $sandbox.ssm

    Step 'Import-Module BastionTools' {
        $elapsed = Measure-Command { Import-Module $ModulePath -Force }
        Write-Host ("imported in {0:N0} ms: {1}" -f $elapsed.TotalMilliseconds, ((Get-Command -Module BastionTools).Name -join ', '))
    }

    Step 'Get-BastionInstance -All' {
        Get-BastionInstance -All | Format-Table | Out-Host
    }

    Step "New-RdsIamToken -Hostname $endpoint -UserName app_reader -Debug" {
        $script:token = New-RdsIamToken -Hostname $endpoint -UserName app_reader -Debug 5>&1 | ForEach-Object {
            if ($_ -is [System.Management.Automation.DebugRecord]) { Write-Host "DEBUG: $($_.Message)" -ForegroundColor DarkGray } else { $_ }
        }
        Write-Host ("token: {0}&X-Amz-Signature=… ({1} characters, valid 15 minutes)" -f ($script:token -split '&X-Amz-Signature=')[0], $script:token.Length)
    }

    Step "`$s = Start-BastionSession -Name bastion -RemoteHost $endpoint -RemotePort $($sandbox.postgres.port)" {
        $script:session = Start-BastionSession -Name bastion -RemoteHost $endpoint -RemotePort $sandbox.postgres.port
        $script:session | Format-Table | Out-Host
    }

    Step "psql -h 127.0.0.1 -p `$s.LocalPort -U $($sandbox.postgres.user) -d $($sandbox.postgres.database) -c 'select * from seed_items'" {
        if (Get-Command psql -ErrorAction SilentlyContinue) {
            # The password reaches psql through its own environment only.
            $p = [System.Diagnostics.ProcessStartInfo]::new('psql')
            foreach ($a in '-X', '-h', '127.0.0.1', '-p', "$($script:session.LocalPort)", '-U', $sandbox.postgres.user, '-d', $sandbox.postgres.database, '-c', 'select * from seed_items order by id') { $p.ArgumentList.Add($a) }
            $p.Environment['PGPASSWORD'] = $sandbox.postgres.password
            $p.UseShellExecute = $false
            $proc = [System.Diagnostics.Process]::Start($p); $proc.WaitForExit()
        }
        else { Write-Host 'psql is not installed: skipping the query (apt-get install -y postgresql-client).' -ForegroundColor DarkYellow }
    }

    Step 'Get-BastionSession' {
        Get-BastionSession | Format-Table | Out-Host
    }

    Step 'Get-BastionSession | Stop-BastionSession' {
        Get-BastionSession | Stop-BastionSession -PassThru | Select-Object SessionId, State, TotalConnections, BytesSent, BytesReceived | Format-Table | Out-Host
    }

    Step "Start-BastionSession -Name bastion -Command 'uname -sr; id -un'" {
        Start-BastionSession -Name bastion -Command 'uname -sr; id -un' | Out-Host
    }

    Write-Host ''
    Write-Host 'Demo finished.' -ForegroundColor Green
}
finally {
    Get-BastionSession -ErrorAction SilentlyContinue | Stop-BastionSession -ErrorAction SilentlyContinue
    $sandboxProcess.StandardInput.Close()
    if (-not $sandboxProcess.WaitForExit(20000)) { $sandboxProcess.Kill($true) }
}
